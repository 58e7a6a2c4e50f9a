rule train:
    input:
        "results/patches.h5",
    output:
        "results/model.h5",
    log:
        "results/logs/train.log",
    conda:
        "../envs/sae.yaml"
    threads: train_threads()
    resources:
        tasks=train_tasks,
        mpi="mpiexec",
    params:
        side=config["patches"]["side"],
        hidden=config["train"]["hidden"],
        rho=config["train"]["rho"],
        lam=config["train"]["lambda"],
        beta=config["train"]["beta"],
        iterations=config["train"]["iterations"],
        seed=config["train"]["seed"],
        block_size=config["train"]["block_size"],
        precision=config["train"]["precision"],
    shell:
        logged(
            "{resources.mpi} -n {resources.tasks} python workflow/scripts/train_model.py {input} {output}"
            " --side {params.side} --hidden {params.hidden} --rho {params.rho} --lambda {params.lam}"
            " --beta {params.beta} --iterations {params.iterations} --seed {params.seed}"
            " --block-size {params.block_size} --precision {params.precision}"
            " --cores-granted {threads}"
        )
