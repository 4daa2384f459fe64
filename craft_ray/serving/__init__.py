"""Ray Serve applications: model engines, the CAS evaluator, the reader-study web app."""
