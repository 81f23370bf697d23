# From multi-view videos of colliding objects to a learned particle dynamics model.
#   snakemake --cores 2 results/bowling/quality/{capture,calibration,depth,masks,tracking,ids,labels}.csv
# Each rule is a thin shell call of `python -m pipeline.<stage>`; the science lives in pipeline/.

configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/capture.smk"
include: "workflow/rules/calibration.smk"
include: "workflow/rules/depth.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/tracking.smk"
include: "workflow/rules/ids.smk"
include: "workflow/rules/labels.smk"


rule all:
    input:
        expand(
            "{results}/{scene}/quality/{stage}.csv",
            results=RESULTS,
            scene=SCENES,
            stage=["capture", "calibration", "depth", "masks", "tracking", "ids", "labels"],
        ),
    default_target: True
