"""A year in production, in an hour: `make soak` runs team mode's real parts (MLflow and Prefect
servers on PostgreSQL, a process worker, a DVC remote, `stfn serve`) through simulated weeks of
labelled batches, retrains, promotions, a rollback and seeded faults, then checks the invariants
that must hold (docs, "Reliability and tests")."""
