"""DICOM on the wire and on disk: the header walk, raw values, encoders, the header facts a worker reads, TLS, the C-STORE client."""
