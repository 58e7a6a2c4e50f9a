# Parallel sparse autoencoder: images -> whitened patches -> MPI-trained model -> figures.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


envvars:
    "PATH",


# Finds this workflow's scripts, package and schema (SCRIPTS, SCHEMA) and puts the
# package on sys.path.
include: "workflow/rules/common.smk"


from sae import SaeError
from sae.config import validate

try:
    validate(config, SCHEMA)
    IMAGE_FILES = image_files()
except SaeError as err:
    sys.exit(f"error: {err}")

# Rules call the python and mpiexec of the environment Snakemake itself runs in.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


# Report labels, the global report page, sweep progress messages.
include: "workflow/rules/report.smk"
include: "workflow/rules/images.smk"
include: "workflow/rules/patches.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/filters.smk"
include: "workflow/rules/curve.smk"
include: "workflow/rules/sweep.smk"
# On Slurm: jobs that no node can hold are refused before anything is submitted.
include: "workflow/rules/slurm.smk"


rule all:
    default_target: True
    input:
        default_outputs,  # the filters and the training curve (workflow/rules/report.smk)
    localrule: True
