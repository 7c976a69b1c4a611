"""Operations around the pipeline: team-mode servers, Prefect deployments, DVC versioning."""
