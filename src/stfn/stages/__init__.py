"""The pipeline's stages, one module each: read inputs -> call the pure code -> write outputs.

    prepare    the dataset exists (a built-in one generated; through `dvc repro prepare` in a DVC repo)
    validate   Great Expectations suites from dataset.yaml -> reports/validation/<name>.{json,html}
    featurize  normalisation fitted on train -> data/features/<name>/ (memmapped arrays)
    train      the STFN -> models/<name>/model.pt, last.pt, history.json
    evaluate   metrics, baselines, plots -> reports/metrics.json, reports/plots/
    track      the pipeline's MLflow run: lineage, parameters, the evaluation's numbers and files
    register   log the model, register it, let the registry's gate judge it
    record     `dvc commit` the outputs a flow made, so `dvc repro` has nothing left to do
    ablate     STFN and its ablation baselines over seeds -> reports/ablation.json

The Prefect flows (`flows/`), DVC (`dvc.yaml`: `python -m stfn.stages.NAME`) and the CLI call
the same functions. Stages pass files, not tensors; every output is written atomically.
"""
