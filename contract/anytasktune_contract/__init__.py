"""What the operator and the trainjob share, and nothing else: the resolved training
spec (`trainspec`), failure classes and their classification (`failures`), the S3
facade (`storage`) and the backoff policy (`backoff`). Imports only pydantic (and
boto3, lazily, for S3): both images install it.
"""
