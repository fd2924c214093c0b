"""vlm_core: the model and one training run, with no Ray Tune — what every trial of a sweep calls.

Rooms, lowest first (a room imports only the rooms before it; tests/test_architecture.py keeps it so):

* ``base``        errors, registry, hashing, outputs, logs, devices, ray_env: what every other room uses;
* ``config``      the typed configs and the named choices of their fields (data; they import no model code);
* ``assets``      where weights come from: hub ids at pinned revisions, packaged models, conversion, download, the
                  paper-shaped builds and their published configs;
* ``model``       the VLM: vision encoders, projectors, the language model, conversation formatting, LoRA;
* ``data``        training samples: records, images, the dataset and collator, the feature cache, token lengths;
* ``training``    one stage of one config: the loop, batching, precision, validation, schedules, stages,
                  checkpoints, data parallelism, sharding, fault injection, one stage end to end;
* ``evaluation``  answers scored by the field's rules, held-out evaluation with text-only controls, inference,
                  LLaVA export;
* ``presets`` and ``commands`` on top: the named presets and ``vlm_core``'s own ``vlm-sweep`` commands.
"""
