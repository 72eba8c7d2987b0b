"""``python -m xkd``: the tools of this project and what each does."""
from __future__ import annotations

import xkd

TOOLS = [
    ("data_prep/make_shards.py", "clips (folder, Kinetics or AudioSet CSV) -> WebDataset shards; --slurm for a job array"),
    ("data_prep/make_av_corpus.py", "the small seeded audio-visual corpus of the ablation"),
    ("launch/pretrain.py", "pretrain XKD (deepspeed / torchrun / python); see configs/ and ds_configs/"),
    ("launch/slurm_submit.py", "the same job on SLURM through submitit, with requeue and resume"),
    ("launch/export_encoders.py", "a checkpoint -> the four encoders (safetensors) + config.yaml"),
    ("eval/linear_svm.py", "linear SVM on frozen features (UCF101, HMDB51, ESC50)"),
    ("eval/fc_tune.py", "one linear layer on frozen features (K400, FSD50K)"),
    ("eval/finetune.py", "full fine-tuning (DDP or DeepSpeed)"),
    ("eval/late_fusion.py", "audio + video features, LinearSVC (Kinetics-Sound)"),
    ("eval/extract_features.py", "cached features of an export"),
    ("eval/random_init.py", "the random-init baseline of a config"),
    ("eval/report.py", "our numbers beside the paper's"),
    ("scripts/quickstart.sh", "set up, shard the sample data, pretrain tiny XKD"),
    ("scripts/test.sh", "set up and run the test suite"),
    ("scripts/mlflow_server.sh", "start / stop / status of a tracking server"),
    ("scripts/slurm_local_cluster.sh", "a real SLURM test cluster on this machine (--nodes N)"),
    ("benchmarks/*.py", "speed, memory and ablation figures of BENCHMARKS.md"),
]


def main() -> None:
    print(f"xkd {xkd.__version__}: XKD audio-visual pretraining (Sarkar & Etemad, AAAI 2024)\n")
    width = max(len(name) for name, _ in TOOLS)
    for name, what in TOOLS:
        print(f"  {name:<{width}}  {what}")
    print("\nIn Python: model, preprocess = xkd.load_encoder(export_dir, 'audio'|'video')  (README, 'Embeddings')")


if __name__ == "__main__":
    main()
