rule images:
    input:
        IMAGE_FILES,
    output:
        "results/images.h5",
    log:
        "results/logs/images.log",
    conda:
        "../envs/sae.yaml"
    threads: 8  # images prepared side by side, one photograph each in memory (docs/running.md)
    params:
        source=config["images"]["source"],
        whiten="" if config["images"]["whiten"] else "--no-whiten",
        shorter_side=config["images"]["shorter_side"] or 0,
    shell:
        logged(
            f"python {script('load_images.py')}"
            " {params.whiten:q} --shorter-side {params.shorter_side:q} --threads {threads}"
            " --files-from <(printf '%s\\0' {input:q}) -- {output:q}"
        )
