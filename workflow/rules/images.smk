rule images:
    input:
        IMAGE_FILES,
    output:
        "results/images.h5",
    log:
        "results/logs/images.log",
    conda:
        "../envs/sae.yaml"
    params:
        source=config["images"]["source"],
        whiten="" if config["images"]["whiten"] else "--no-whiten",
    shell:
        logged(
            f"python {script('load_images.py')}"
            " {params.whiten:q} -- {output:q} {input:q}"
        )
