"""Durable jobs: the job store (records and media), and the workers that run the jobs."""
