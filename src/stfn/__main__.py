"""`python -m stfn ...` is the `stfn` command (what dvc.yaml's stages call)."""

from stfn.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
