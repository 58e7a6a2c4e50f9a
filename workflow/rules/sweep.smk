# Scaling sweep: `snakemake --cores 2 sweep` times the MPI training over config
# `sweep` (ranks x hidden units x sizes x repeats) and writes results/sweep/: runtimes.csv,
# runtimes.md, scaling.csv, speedup.png, efficiency.png, breakdown.png, model.png
# and model.json, with the benchmarks the model is fitted to (collectives/, optimizer.csv).
# Timing runs train as rule `train` does, without checkpoints.
#
# Timing runs must not share cores: each holds one `sweep_timing` unit, and the
# workflow profile (profiles/default/config.yaml) limits them to 1 at a time.
# Runs on 2+ ranks are MPI jobs launched by their `mpi` resource (mpiexec, or what a
# profile sets, e.g. srun on Slurm); one-rank runs are plain processes (rules *_one_rank).

SWEEP = config["sweep"]
SWEEP_RUNS = expand(
    "results/sweep/runs/p{ranks}_h{hidden}_n{samples}_r{repeat}.h5",
    ranks=SWEEP["ranks"],
    hidden=SWEEP["hidden"],
    samples=SWEEP["sizes"],
    repeat=range(1, SWEEP["repeats"] + 1),
)


use rule patches as sweep_patches with:
    output:
        "results/sweep/patches.h5",
    log:
        "results/logs/sweep/patches.log",
    params:
        n=max(SWEEP["sizes"]),


rule sweep_train:
    input:
        "results/sweep/patches.h5",
    output:
        "results/sweep/runs/p{ranks}_h{hidden}_n{samples}_r{repeat}.h5",
    log:
        "results/logs/sweep/train_p{ranks}_h{hidden}_n{samples}_r{repeat}.log",
    wildcard_constraints:
        ranks=r"[2-9]|[1-9]\d+",
        hidden=r"[1-9]\d*",
        samples=r"[1-9]\d*",
        repeat=r"[1-9]\d*",
    priority: sweep_priority
    conda:
        "../envs/sae.yaml"
    threads: lambda wildcards: int(wildcards.ranks)
    resources:
        tasks=lambda wildcards: int(wildcards.ranks),
        mpi="mpiexec",
        sweep_timing=1,
        memory_mb=config["train"]["memory_mb"] or 0,
        sweep_point=sweep_point,
    params:
        **train_params(
            max(SWEEP["sizes"]),
            SWEEP["iterations"],
            lambda wildcards: wildcards.hidden,
        ),
        launch=mpi_launch,
    message:
        "{rule}: {resources.sweep_point}, {wildcards.ranks} ranks x {wildcards.hidden} hidden"
        " x {wildcards.samples} patches, repeat {wildcards.repeat} ({threads} cores)"
    shell:
        train_shell("--samples {wildcards.samples:q}", "{params.launch}")


use rule sweep_train as sweep_train_one_rank with:
    wildcard_constraints:
        ranks="1",
        hidden=r"[1-9]\d*",
        samples=r"[1-9]\d*",
        repeat=r"[1-9]\d*",
    threads: 1
    resources:
        tasks=1,
        mpi="",
        sweep_timing=1,
        memory_mb=config["train"]["memory_mb"] or 0,
        sweep_point=sweep_point,


rule sweep_collectives:
    input:
        "results/sweep/patches.h5",
    output:
        report(
            "results/sweep/collectives/p{ranks}.csv",
            caption="../report/sweep_collectives.rst",
            category="Scaling",
            subcategory="Tables",
            labels={"table": "collectives benchmark, {ranks} ranks"},
        ),
    log:
        "results/logs/sweep/collectives_p{ranks}.log",
    wildcard_constraints:
        ranks=r"[2-9]|[1-9]\d+",
    conda:
        "../envs/sae.yaml"
    threads: lambda wildcards: int(wildcards.ranks)
    resources:
        tasks=lambda wildcards: int(wildcards.ranks),
        mpi="mpiexec",
        sweep_timing=1,
    params:
        side=config["patches"]["side"],
        hidden=max(SWEEP["hidden"]),  # scales down to the smaller models' buffers
        scales=[0.0625, 0.125, 0.25, 0.5, 1, 2, 4],
        repeats=300,
        launch=mpi_launch,
    shell:
        logged(
            "{params.launch}"
            f"python {script('sweep_collectives.py')}"
            " --side {params.side:q} --hidden {params.hidden:q} --scales {params.scales:q}"
            " --repeats {params.repeats:q} -- {input:q} {output:q}"
        )


use rule sweep_collectives as sweep_collectives_one_rank with:
    wildcard_constraints:
        ranks="1",
    threads: 1
    resources:
        tasks=1,
        mpi="",
        sweep_timing=1,


rule sweep_optimizer:
    output:
        report(
            "results/sweep/optimizer.csv",
            caption="../report/sweep_optimizer.rst",
            category="Scaling",
            subcategory="Tables",
            labels={"table": "optimizer benchmark"},
        ),
    log:
        "results/logs/sweep/optimizer.log",
    conda:
        "../envs/sae.yaml"
    threads: 1
    resources:
        sweep_timing=1,
    params:
        side=config["patches"]["side"],
        hidden=SWEEP["hidden"],
        evaluations=200,
    shell:
        logged(
            f"python {script('sweep_optimizer.py')}"
            " --side {params.side:q} --hidden {params.hidden:q} --evaluations {params.evaluations:q}"
            " -- {output:q}"
        )


rule sweep_runtimes:
    input:
        SWEEP_RUNS,
    output:
        report(
            "results/sweep/runtimes.csv",
            caption="../report/sweep_runtimes_csv.rst",
            category="Scaling",
            subcategory="Tables",
            labels={"table": "every timed run"},
        ),
    log:
        "results/logs/sweep/runtimes.log",
    localrule: True  # light: on a cluster it runs where Snakemake runs
    conda:
        "../envs/sae.yaml"
    shell:
        logged(f"python {script('sweep_runtimes.py')}" " -- {output:q} {input:q}")


rule sweep_report:
    input:
        "results/sweep/runtimes.csv",
    output:
        table=report(
            "results/sweep/runtimes.md",
            caption="../report/sweep_runtimes_md.rst",
            category="Scaling",
            subcategory="Tables",
            labels={"table": "median loop seconds (the report's Figure 3.1)"},
        ),
        scaling=report(
            "results/sweep/scaling.csv",
            caption="../report/sweep_scaling.rst",
            category="Scaling",
            subcategory="Tables",
            labels={"table": "speedup and efficiency per point"},
        ),
        speedup=report(
            "results/sweep/speedup.png",
            caption="../report/sweep_speedup.rst",
            category="Scaling",
            subcategory="Figures",
            labels=speedup_labels,
        ),
        efficiency=report(
            "results/sweep/efficiency.png",
            caption="../report/sweep_efficiency.rst",
            category="Scaling",
            subcategory="Figures",
            labels=efficiency_labels,
        ),
        breakdown=report(
            "results/sweep/breakdown.png",
            caption="../report/sweep_breakdown.rst",
            category="Scaling",
            subcategory="Figures",
            labels=breakdown_labels,
        ),
    log:
        "results/logs/sweep/report.log",
    localrule: True  # light: on a cluster it runs where Snakemake runs
    conda:
        "../envs/sae.yaml"
    shell:
        logged(
            f"python {script('sweep_report.py')}"
            " --table {output.table:q} --scaling {output.scaling:q} --speedup {output.speedup:q}"
            " --efficiency {output.efficiency:q} --breakdown {output.breakdown:q}"
            " -- {input:q}"
        )


rule sweep_model:
    input:
        runtimes="results/sweep/runtimes.csv",
        optimizer="results/sweep/optimizer.csv",
        collectives=expand(
            "results/sweep/collectives/p{ranks}.csv", ranks=SWEEP["ranks"]
        ),
    output:
        fit=report(
            "results/sweep/model.json",
            caption="../report/sweep_model_json.rst",
            category="Scaling",
            subcategory="Tables",
            labels={"table": "performance model fit"},
        ),
        plot=report(
            "results/sweep/model.png",
            caption="../report/sweep_model.rst",
            category="Scaling",
            subcategory="Figures",
            labels=model_labels,
        ),
    log:
        "results/logs/sweep/model.log",
    localrule: True  # light: on a cluster it runs where Snakemake runs
    conda:
        "../envs/sae.yaml"
    params:
        max_ranks=1024,
        max_samples=10**8,
        predict_at=[16, 10000, 16, 160000],  # (ranks, patches): the report's 16 processes
    shell:
        logged(
            f"python {script('sweep_model.py')}"
            " --fit {output.fit:q} --plot {output.plot:q}"
            " --max-ranks {params.max_ranks:q} --max-samples {params.max_samples:q}"
            " --predict-at {params.predict_at:q}"
            " -- {input.runtimes:q} {input.optimizer:q} {input.collectives:q}"
        )


rule sweep:
    input:
        rules.sweep_runtimes.output,
        rules.sweep_report.output,
        rules.sweep_model.output,
    localrule: True  # light: on a cluster it runs where Snakemake runs
