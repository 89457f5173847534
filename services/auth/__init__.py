"""auth: issues and verifies the browsers' tokens (JWT), answering the user id and topics a token grants."""
