rule filters:
    input:
        "results/model.h5",
    output:
        "results/filters.png",
    log:
        "results/logs/filters.log",
    conda:
        "../envs/sae.yaml"
    shell:
        logged(f"python {script('plot_filters.py')}" " -- {input:q} {output:q}")
