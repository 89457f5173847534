"""collect: takes business systems' posts over HTTP, stores each in MongoDB, and hands it to dispatch; answers status,
presence and cancel."""
