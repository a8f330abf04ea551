"""Ordered schema migrations. Never edit a released migration: append a new one instead."""

# Version 1: the first schema. Every result row carries its provenance
# ('measured', 'published' or 'predicted'), the environment it came from, and for measured
# rows the full technique configuration, so that a number can always be traced to its origin.
MIGRATION_1 = [
    """
    CREATE TABLE environments (
        env_key VARCHAR PRIMARY KEY,      -- stable hash of the hardware and library profile
        cpu_model VARCHAR,
        cpu_count INTEGER,
        device VARCHAR NOT NULL,          -- 'cpu' or the CUDA device name
        os VARCHAR,
        python_version VARCHAR,
        torch_version VARCHAR,
        timm_version VARCHAR,
        num_threads INTEGER,
        profile_json VARCHAR NOT NULL,    -- the full profile the key was computed from
        first_seen TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE models (
        model_key VARCHAR PRIMARY KEY,    -- e.g. 'mnist/resnet10t' or 'efficientnet_lite0'
        architecture VARCHAR NOT NULL,    -- timm architecture name
        family VARCHAR NOT NULL,
        weights_source VARCHAR NOT NULL,  -- where the weights came from (file, package, trained here)
        weights_sha256 VARCHAR,
        num_classes INTEGER,
        in_chans INTEGER,
        input_size INTEGER,               -- square input side in pixels
        param_count BIGINT,
        conv_linear_param_count BIGINT,   -- weights of all Conv2d and Linear layers
        num_conv_linear_layers INTEGER,
        depthwise_param_share DOUBLE,     -- share of Conv2d/Linear weights in depthwise convolutions
        linear_param_share DOUBLE,
        has_attention BOOLEAN,
        updated_at TIMESTAMP NOT NULL
    )
    """,
    """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY,
        command VARCHAR NOT NULL,
        status VARCHAR NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
        env_key VARCHAR,
        product_version VARCHAR NOT NULL,
        config_json VARCHAR NOT NULL,
        error VARCHAR,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP
    )
    """,
    """
    CREATE TABLE results (
        result_id VARCHAR PRIMARY KEY,
        run_id VARCHAR,
        model_key VARCHAR NOT NULL,
        dataset VARCHAR NOT NULL,
        labelled BOOLEAN NOT NULL,
        provenance VARCHAR NOT NULL CHECK (provenance IN ('measured', 'published', 'predicted')),
        source VARCHAR,                   -- citation for published rows, model version for predicted
        env_key VARCHAR,
        criterion VARCHAR NOT NULL,       -- 'dense', 'magnitude', 'wanda', 'sparsegpt'
        allocation VARCHAR NOT NULL,      -- 'none', 'uniform', 'global_magnitude'
        pattern VARCHAR NOT NULL,         -- 'dense', 'unstructured' or 'N:M'
        recipe_json VARCHAR NOT NULL,     -- the full resolved technique configuration
        layer_policy_json VARCHAR NOT NULL,
        requested_sparsity DOUBLE NOT NULL CHECK (requested_sparsity >= 0 AND requested_sparsity < 1),
        achieved_sparsity DOUBLE,         -- zeros / weights over every Conv2d and Linear layer
        achieved_sparsity_targeted DOUBLE,-- zeros / weights over the layers the policy pruned
        layer_sparsity_json VARCHAR,      -- per-layer achieved sparsity of the evaluated model
        skipped_layers_json VARCHAR,      -- layers the pattern could not be applied to, with why
        calibration_size INTEGER,
        calibration_seed INTEGER,
        eval_size INTEGER,
        top1 DOUBLE,                      -- percent; NULL for unlabelled data
        top5 DOUBLE,
        dense_top1 DOUBLE,                -- the dense model on the same evaluation set
        dense_top5 DOUBLE,
        top1_agreement DOUBLE,            -- percent of inputs whose top-1 class matches the dense model
        kl_divergence DOUBLE,             -- mean KL(dense || sparse) in nats
        runtime VARCHAR,                  -- e.g. 'torch-eager'
        latency_batch_size INTEGER,
        latency_p50_ms DOUBLE,
        latency_p90_ms DOUBLE,
        latency_warmup INTEGER,
        latency_repeats INTEGER,
        num_threads INTEGER,
        prune_seconds DOUBLE,
        created_at TIMESTAMP NOT NULL
    )
    """,
    "CREATE INDEX results_model_idx ON results (model_key, dataset)",
]

# Each entry moves the schema from version (index) to version (index + 1).
# Version 2: the weight bytes of each result's evaluated model in every storage format, as JSON
# {"dense": ..., "csr": ..., "bitmask": ..., "semi_structured_2_4": ...}, counted at float32
# values and int32 indices. Rows written before version 2 have NULL.
# The latency columns added with it: p99, the spread (interquartile range / median) and the
# throughput in inputs per second at the median.
MIGRATION_2 = [
    "ALTER TABLE results ADD COLUMN weight_bytes_json VARCHAR",
    "ALTER TABLE results ADD COLUMN latency_p99_ms DOUBLE",
    "ALTER TABLE results ADD COLUMN latency_spread DOUBLE",
    "ALTER TABLE results ADD COLUMN throughput_per_s DOUBLE",
    # One row per timing of a model on one runtime and batch size (`ptsa latency`). Dense rows
    # have sparsity 0; a sparse row's speedup and verdict compare it with the dense row of the
    # same model, runtime, batch size and run.
    """
    CREATE TABLE latency (
        latency_id VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,
        model_key VARCHAR NOT NULL,
        env_key VARCHAR NOT NULL,
        runtime VARCHAR NOT NULL,         -- 'torch-eager', 'torch-sparse-csr', 'onnxruntime-cpu', ...
        batch_size INTEGER NOT NULL,
        criterion VARCHAR NOT NULL,       -- 'dense' or the criterion that pruned the timed model
        requested_sparsity DOUBLE NOT NULL,
        pattern VARCHAR NOT NULL,         -- 'dense', 'unstructured' or N:M such as '2:4'
        achieved_sparsity DOUBLE NOT NULL, -- over the layers the policy targets
        sparse_kernel VARCHAR,            -- the sparse kernel that ran; NULL when only dense kernels ran
        sparse_layers INTEGER NOT NULL,
        max_abs_diff DOUBLE NOT NULL,     -- largest output difference from the PyTorch model
        p50_ms DOUBLE NOT NULL,
        p90_ms DOUBLE NOT NULL,
        p99_ms DOUBLE NOT NULL,
        spread DOUBLE NOT NULL,           -- interquartile range / median
        throughput_per_s DOUBLE NOT NULL,
        warmup INTEGER NOT NULL,
        repeats INTEGER NOT NULL,
        num_threads INTEGER NOT NULL,
        speedup DOUBLE,                   -- dense p50 / this p50; NULL for dense rows
        verdict VARCHAR,
        weight_bytes_json VARCHAR NOT NULL,
        peak_rss_bytes BIGINT,            -- process peak during the timed passes; NULL off Linux
        peak_cuda_bytes BIGINT,           -- CUDA allocator peak; NULL without a GPU
        created_at TIMESTAMP NOT NULL
    )
    """,
]

# Version 3: latency rows measured inside `ptsa bench` name the result they time (result_id).
# `protocol` is how the row was timed: 'interleaved' when the models of one comparison were
# timed in alternating rounds (rows written before version 3 were timed one after another and
# have NULL). `baseline_p50_ms` is the dense p50 timed in the same comparison, the denominator
# of `speedup`.
MIGRATION_3 = [
    "ALTER TABLE latency ADD COLUMN result_id VARCHAR",
    "ALTER TABLE latency ADD COLUMN protocol VARCHAR",
    "ALTER TABLE latency ADD COLUMN baseline_p50_ms DOUBLE",
]

# Version 4: the robustness regressor.
# `architectures` contains the features of a timm architecture computed without weights, per input
# shape and class count, with the timm version and feature version they were computed with.
# `regressor_fits` records each fitted regressor: its training data hash, its held-out-family
# metrics next to the baselines', and the file and checksum of the fitted model.
# `results.prediction_json` holds, for rows with provenance 'predicted', the predicted retention
# with its interval, the fit that made it and the features that drove it.
# `models.weight_stats_json` holds statistics of the real weights (magnitude spread, kurtosis,
# outlier share) when the model was benched with weights.
MIGRATION_4 = [
    """
    CREATE TABLE architectures (
        architecture VARCHAR NOT NULL,
        num_classes INTEGER NOT NULL,
        in_chans INTEGER NOT NULL,
        input_size INTEGER NOT NULL,
        timm_version VARCHAR NOT NULL,
        feature_version INTEGER NOT NULL,
        family VARCHAR NOT NULL,          -- the timm module, such as 'resnet' or 'vision_transformer'
        params BIGINT NOT NULL,
        gmacs DOUBLE NOT NULL,            -- multiply-accumulates per image at input_size, in billions
        features_json VARCHAR NOT NULL,   -- every feature by name, all numbers
        computed_at TIMESTAMP NOT NULL,
        PRIMARY KEY (architecture, num_classes, in_chans, input_size, timm_version, feature_version)
    )
    """,
    """
    CREATE TABLE regressor_fits (
        fit_id VARCHAR PRIMARY KEY,
        product_version VARCHAR NOT NULL,
        sklearn_version VARCHAR NOT NULL,
        feature_version INTEGER NOT NULL,
        training_sha256 VARCHAR NOT NULL, -- hash of the training rows, features and targets
        n_rows INTEGER NOT NULL,
        n_architectures INTEGER NOT NULL,
        n_families INTEGER NOT NULL,
        feature_names_json VARCHAR NOT NULL,
        metrics_json VARCHAR NOT NULL,    -- held-out-family metrics of the regressor and baselines
        model_path VARCHAR NOT NULL,
        model_sha256 VARCHAR NOT NULL,
        created_at TIMESTAMP NOT NULL
    )
    """,
    "ALTER TABLE results ADD COLUMN prediction_json VARCHAR",
    "ALTER TABLE models ADD COLUMN weight_stats_json VARCHAR",
]

# Version 5: published timings. Latency rows get a provenance ('measured' for every row written
# before) and a citation. A published timing may lack what the product measures itself (p90,
# p99, spread, repeats, threads, output check, weight bytes), so those columns become nullable.
MIGRATION_5 = [
    "ALTER TABLE latency ADD COLUMN provenance VARCHAR DEFAULT 'measured'",
    "ALTER TABLE latency ADD COLUMN source VARCHAR",
    *(f"ALTER TABLE latency ALTER COLUMN {column} DROP NOT NULL" for column in (
        "p90_ms", "p99_ms", "spread", "warmup", "repeats", "num_threads", "max_abs_diff", "weight_bytes_json")),
]

# Version 6: jobs, for runs that survive crashes and resume. A job is one configuration of one
# model on one dataset, runtime set and hardware profile; its key is a content hash of all of
# these (`bench_engine.jobs`). `jobs` records each job's last outcome, so a bench skips finished
# jobs and `--retry-failed` finds the failed ones; `results.job_key` ties each row to its job.
MIGRATION_6 = [
    """
    CREATE TABLE jobs (
        job_key VARCHAR PRIMARY KEY,
        run_id VARCHAR NOT NULL,          -- the run that last attempted it
        model_key VARCHAR NOT NULL,
        label VARCHAR,                    -- model, recipe and sparsity, for people
        spec_json VARCHAR NOT NULL,       -- everything the key was computed from
        status VARCHAR NOT NULL,          -- 'finished' or 'failed'
        error VARCHAR,                    -- why it failed: the exception, or how the worker died
        attempts INTEGER NOT NULL,
        result_count INTEGER NOT NULL,
        updated_at TIMESTAMP NOT NULL
    )
    """,
    "ALTER TABLE results ADD COLUMN job_key VARCHAR",
    "ALTER TABLE latency ADD COLUMN job_key VARCHAR",
]

# Version 7: detection as a second task. `task` names what a row measures ('classification' or
# 'detection'); rows stored before it are classification. A detection row scores boxes: box
# mAP@[.5:.95] and mAP@.5 against the labels, in percent like top-1, and `box_map_fidelity`, the
# mAP@[.5:.95] of the sparse model's boxes scored against the dense model's boxes that score at
# least `box_reference_score`.
MIGRATION_7 = [
    "ALTER TABLE results ADD COLUMN task VARCHAR DEFAULT 'classification'",
    "ALTER TABLE results ADD COLUMN box_map DOUBLE",
    "ALTER TABLE results ADD COLUMN box_map_50 DOUBLE",
    "ALTER TABLE results ADD COLUMN dense_box_map DOUBLE",
    "ALTER TABLE results ADD COLUMN dense_box_map_50 DOUBLE",
    "ALTER TABLE results ADD COLUMN box_map_fidelity DOUBLE",
    "ALTER TABLE results ADD COLUMN box_reference_score DOUBLE",  # the dense score a reference box needs
    "ALTER TABLE models ADD COLUMN task VARCHAR DEFAULT 'classification'",
]

# Version 8: the task of an architecture's features, so that the regressor and the Models tab
# tell detectors from classifiers.
MIGRATION_8 = [
    "ALTER TABLE architectures ADD COLUMN task VARCHAR DEFAULT 'classification'",
]

MIGRATIONS: list[list[str]] = [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5, MIGRATION_6,
                               MIGRATION_7, MIGRATION_8]
