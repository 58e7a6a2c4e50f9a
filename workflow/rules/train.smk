rule train:
    input:
        "results/patches.h5",
    output:
        "results/model.h5",
    log:
        "results/logs/train.log",
    retries: 2  # a killed or failed attempt resumes from its checkpoint
    conda:
        "../envs/sae.yaml"
    threads: train_threads()
    # Values that cannot change the model are resources, so changing them re-runs nothing.
    resources:
        tasks=train_tasks,
        mpi="mpiexec",
        memory_mb=config["train"]["memory_mb"] or 0,
        checkpoint_every=config["train"]["checkpoint_every"],
    params:
        side=config["patches"]["side"],
        n=config["patches"]["count"],
        patches_seed=config["patches"]["seed"],
        hidden=config["train"]["hidden"],
        rho=config["train"]["rho"],
        lam=config["train"]["lambda"],
        beta=config["train"]["beta"],
        iterations=config["train"]["iterations"],
        seed=config["train"]["seed"],
        block_size=config["train"]["block_size"],
        precision=config["train"]["precision"],
        checkpoint="results/checkpoints/model.h5",
    shell:
        logged(
            "{resources.mpi} -n {resources.tasks} python workflow/scripts/train_model.py {input} {output}"
            " --side {params.side} --hidden {params.hidden} --rho {params.rho} --lambda {params.lam}"
            " --beta {params.beta} --iterations {params.iterations} --seed {params.seed}"
            " --block-size {params.block_size} --precision {params.precision}"
            " --expect-count {params.n} --expect-seed {params.patches_seed}"
            " --checkpoint {params.checkpoint} --checkpoint-every {resources.checkpoint_every}"
            " --memory-mb {resources.memory_mb} --cores-granted {threads}"
        )
