#!/usr/bin/env bash
# The GPU checks in one go, on a CUDA machine (internet not needed), from the repository root:
#   python benchmarks/bench_gpu.py prepare .gpu      # first, where the dev install is (offline data packages)
#   bash benchmarks/gpu_checks.sh .gpu [OUT_DIR]     # then, on the GPU machine with the folder copied over
# 1. bench_gpu.py: parity (fp32, bf16 per attention backend, gradients), forward and MLM throughput vs transformers,
#    Embedder vs sentence-transformers;  2. bench_contrastive.py: contrastive steps, plain vs GradCache, vs
#    sentence-transformers' CachedMultipleNegativesRankingLoss;  3. 40 stage-2 steps of the full 137M model from
#    scratch on the prepared real pairs (bf16, auto attention), held-out retrieval logged at steps 0, 20 and 40.
# The open GPU targets each section measures against (MLM >= 40% MFU, forward >= 40% of peak, GradCache >= 1.3x
# CachedMNRL at batch >= 1,024, flash-attn parity) are listed at the end of bench_gpu.py's docstring.
set -o pipefail
data=${1:?usage: bash benchmarks/gpu_checks.sh DATA_DIR [OUT_DIR]}
out=${2:-gpu_checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
python benchmarks/bench_gpu.py run --data "$data" --out "$out" 2>&1 | grep -v "Loading weights\|Writing model" | tee "$out/gpu.log"
python benchmarks/bench_contrastive.py --device cuda --model base --precision bf16 --data "$data" --query-length 64 \
  --document-length 256 --batch-sizes 128 256 512 --gradcache-only 1024 4096 --chunk-size 128 --peer-batch 1024 \
  --repeats 2 2>&1 | tee "$out/contrastive.log"
run="$out/stage2_run"
rm -rf "$run"
nomic_embed_train --config configs/contrastive_pretrain_tiny.yaml \
  --set init_from=null --set model.attention_backend=auto --set training.precision=auto \
  --set "output_dir=$run" --set "data.tokenizer=$data/tokenizer" \
  --set "data.sources=[{name: wikipedia_sections, data_files: $data/pairs/wikipedia_sections.jsonl}, {name: python_docstrings, data_files: $data/pairs/python_docstrings.jsonl}, {name: pydoc_topics, data_files: $data/pairs/pydoc_topics.jsonl}]" \
  --set data.query_max_length=64 --set data.document_max_length=256 --set data.held_out_fraction=0.1 \
  --set training.num_epochs=null --set training.max_steps=40 --set training.global_batch_size=256 --set training.micro_batch_size=64 \
  --set schedule.warmup_steps=5 --set optimizer.lr=2.0e-4 --set checkpoint.every_steps=20 --set logging.eval_every_steps=20 \
  --set logging.progress_bar=false 2>&1 | grep -v "Generating\|Map" | tail -3 | tee "$out/train.log"
grep eval_mrr "$run/metrics.jsonl" | tee -a "$out/train.log"
