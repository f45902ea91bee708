"""f2pipe certgen: the FastAPI certificate authority that enrols F2 controllers."""
