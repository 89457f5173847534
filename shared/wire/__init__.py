"""What crosses a boundary, as plain typed data free of I/O: client frames and link batches (``protocol``), signed
proofs (``signing``), the one error map to HTTP status and close codes (``errors``) and the OpenAPI pieces (``openapi``).
"""
