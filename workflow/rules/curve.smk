rule training_curve:
    input:
        "results/model.h5",
    output:
        report(
            "results/training.png",
            caption="../report/training.rst",
            category="Training",
            labels=training_labels,
        ),
    log:
        "results/logs/training_curve.log",
    localrule: True  # light: on a cluster it runs where Snakemake runs
    conda:
        "../envs/sae.yaml"
    shell:
        logged(f"python {script('plot_training.py')}" " -- {input:q} {output:q}")
