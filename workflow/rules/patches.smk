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
            "python workflow/scripts/sample_patches.py {input} {output}"
            " --count {params.n} --side {params.side} --seed {params.seed}"
        )
