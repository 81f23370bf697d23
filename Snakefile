# From multi-view videos of colliding objects to a learned particle dynamics model.
#   snakemake --cores 2 results/bowling/quality/capture.csv
# Each rule is a thin shell call of `python -m pipeline.<stage>`; the science lives in pipeline/.

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/capture.smk"


rule all:
    input:
        expand("{results}/{scene}/quality/capture.csv", results=RESULTS, scene=list(config["scenes"])),
    default_target: True
