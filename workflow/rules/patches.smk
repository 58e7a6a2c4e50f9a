rule patches:
    input:
        "results/images.h5",
    output:
        "results/patches.h5",
    log:
        "results/logs/patches.log",
    conda:
        "../envs/sae.yaml"
    params:
        n=config["patches"]["count"],
        side=config["patches"]["side"],
        seed=config["patches"]["seed"],
    shell:
        logged(
            f"python {script('sample_patches.py')}"
            " --count {params.n:q} --side {params.side:q} --seed {params.seed:q}"
            " -- {input:q} {output:q}"
        )
