"""The receiving side: DICOM SCP, spool, ledger, assembler and router."""
