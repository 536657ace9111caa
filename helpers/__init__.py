"""Helpers for the continued pre-training notebook series: the map of every module, by layer.

Three layers; a module imports only from its own layer or the layers below it, never above
(``tests/repo/test_layers.py`` reads every import and fails on an upward arrow or a cycle).
Importing this package imports no heavy library.

``helpers`` - what notebooks 00-06 teach; a learner reads these:

- :mod:`helpers.profiles` - the run's settings as named profiles, and how one is chosen
- :mod:`helpers.session` - the first cell of every notebook (profile check, seeds, versions)
- :mod:`helpers.modeling` - loading the model (hub, unsloth or transformers; the input device)
- :mod:`helpers.data` - raw text: loading, EOS, tokenizing, packing
- :mod:`helpers.training` - LoRA, the embedding learning rate, the trainer; which embedding rows get a gradient
- :mod:`helpers.evaluation` - held-out perplexity
- :mod:`helpers.generation` - greedy generation, in-process or in a fresh process without PEFT
- :mod:`helpers.streaming` - streaming generation printed wrapped
- :mod:`helpers.memory` - memory probes and the stage recorder
- :mod:`helpers.artifacts` - manifests: artifacts checked to belong to the current run (``require``), saved as a unit
- :mod:`helpers.handoff` - inputs from an earlier notebook run in another runtime: cheap ones rebuilt
  where needed (02's dataset, in 05), expensive ones required (05's adapter)
- :mod:`helpers.checkpoints` - checkpointed, resumable training; atomic adapter saves
- :mod:`helpers.errors` - clear errors (model unavailable, out of memory, disk full, a bad adapter) and
  settings that cannot train, refused before anything runs

``helpers.support`` - plumbing the notebooks call but never teach; imports nothing above it:

- :mod:`helpers.support.paths` - ``outputs/`` (or the folder ``$CPT_OUTPUTS`` names), the cache and the
  registered artifacts' paths
- :mod:`helpers.support.files` - atomic writes (JSON, model folders), folder sizes, leftovers of killed
  saves; file hashes, and whether a safetensors / torch.save / JSON file is whole
- :mod:`helpers.support.gguf` - the offline models: the embedded GGUF, a user's ``.gguf``, the smoke model
- :mod:`helpers.support.progress` - progress bars: live for a person, absent from saved notebooks
- :mod:`helpers.support.varlen_attention` - torch's varlen_attn behind unsloth's packed attention (GQA wrapper)

``helpers.lab`` - the notebooks beyond the walkthrough (07-15), the scripts and the benchmarks:

- :mod:`helpers.lab.forgetting` - out-of-domain perplexity (what CPT costs elsewhere; notebook 07)
- :mod:`helpers.lab.patch_probe` - what importing unsloth replaces in transformers (notebook 01, GPU)
- :mod:`helpers.lab.lora_memory` - LoRA vs full fine-tuning memory as sequences grow (notebook 04, GPU)
- :mod:`helpers.lab.merging` - merging the adapter into the base weights; what an adapter file holds (09, 10)
- :mod:`helpers.lab.export` - a merged model as one GGUF file (notebook 08)
- :mod:`helpers.lab.batching_speed` - training speed of padded rows vs packed blocks (notebook 09)
- :mod:`helpers.lab.short_runs` - short training runs for the sweeps of notebooks 07, 09 and 10
- :mod:`helpers.lab.new_knowledge` - fill-in prompts for made-up facts, and their recall (notebook 07)
- :mod:`helpers.lab.long_context` - perplexity past the trained context, and RoPE surgery (notebook 09)
- :mod:`helpers.lab.throughput` - tokens/s over steady optimizer steps, MFU (scripts, benchmarks)
- :mod:`helpers.lab.step_trace` - one optimizer step under ``torch.profiler`` (scripts, benchmarks)
- :mod:`helpers.lab.distributed` - several processes: batch split, rank sync check, run comparison (train_cpt.py)
"""

__version__ = "0.1.0"
