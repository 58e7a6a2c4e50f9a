rule filters:
    input:
        "results/model.h5",
    output:
        report(
            "results/filters.png",
            caption="../report/filters.rst",
            category="Features",
            labels=filters_labels,
        ),
    log:
        "results/logs/filters.log",
    localrule: True  # light: on a cluster it runs where Snakemake runs
    conda:
        "../envs/sae.yaml"
    shell:
        logged(f"python {script('plot_filters.py')}" " -- {input:q} {output:q}")
