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
            "python workflow/scripts/load_images.py {output} {input} {params.whiten}"
        )
