"""Prefect flows: thin orchestration over `stfn.stages`."""
