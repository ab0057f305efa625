"""The offline suite's evaluator against a plain forward pass over the same tokens.

    python benchmarks/bench_evaluate.py                 # the whole suite, random init at the `small` budget's shape
    python benchmarks/bench_evaluate.py --rounds 3 --tasks NewsLeadRetrieval LeeSTS

For one model (random weights, seed 0, hidden 128, 2 blocks: 4.4M parameters, trained length 128), round by round:
`evaluate_offline` on the tasks (every distinct input embedded once per token limit, then the records), and the
model's forward pass alone over the same distinct inputs in the same length-sorted batches (no tokenisation,
pooling or scoring). Prints both times and their ratio: near 1 means the evaluator runs at the model's rate.
One thread (as the reproduction evaluates); wall-clock times on a shared machine vary, the ratio less.
"""
import argparse
import os
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=None, help="offline tasks (default: the whole suite)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    import torch
    torch.set_num_threads(1)
    import nomic_embed.evaluate as E
    from nomic_embed.inference import length_sorted_batches, pad_token_ids, tokenize
    directory = E.save_random_init(tempfile.mkdtemp() + "/random-init", seed=0, hidden_size=128, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=512, max_trained_positions=128)
    suite = E.offline_tasks(args.tasks)
    encoder = E.load_encoder(directory, "random init", device="cpu", trained_length=128)
    long = [t for t in suite if t.name == E.LONG_DOCUMENT_TASK]
    jobs = {512: [t for t in suite if t not in long]}  # the token limits evaluate_offline reads at (dynamic NTK only)
    jobs.setdefault(128, []).extend(t for t in suite if t.name in E.PRIMARY_ENDPOINT["tasks"])
    for length in E.default_lengths(128):
        jobs.setdefault(length, []).extend(long)
    batches = []
    for length, tasks in jobs.items():
        inputs = list(dict.fromkeys(x for t in tasks for side, texts in E.task_parts(t)
                                    for x in E.model_inputs(encoder, texts, t.type, side)))
        ids, _ = tokenize(encoder.embedder.tokenizer, inputs, length)
        for batch in length_sorted_batches([len(x) for x in ids], args.batch_size, 16384):
            batches.append(pad_token_ids([ids[i] for i in batch], encoder.embedder.tokenizer.pad_token_id, "cpu"))
    tokens = sum(int(mask.sum()) for _, mask in batches)
    for round_ in range(args.rounds):
        started = time.monotonic()
        E.evaluate_offline([("random init", directory)], args.tasks, trained_length=128, plain_rope=False,
                           batch_size=args.batch_size, progress=None)
        suite_seconds = time.monotonic() - started
        started = time.monotonic()
        with torch.inference_mode():
            for input_ids, mask in batches:
                encoder.embedder.model(input_ids, attention_mask=mask)
        forward_seconds = time.monotonic() - started
        print(f"round {round_}: evaluator {suite_seconds:.1f} s, forward alone {forward_seconds:.1f} s over {tokens:,} "
              f"tokens, ratio {suite_seconds / forward_seconds:.2f}")


if __name__ == "__main__":
    main()
