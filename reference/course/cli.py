"""`llm-course`: the course's command line. Thin: it parses arguments, calls the package, prints.

    llm-course list [CHAPTER ...] [--markdown] [--tests]   chapters, exercises and their points
    llm-course grade [CHAPTER ...] [--impl exercises|reference] [--json PATH] [--timeout SECONDS]
                     [--budget SECONDS] [--exercises-path DIR]
    llm-course generate --model NAME [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] "prompt"
    llm-course chat [--model NAME] [--system TEXT] [--max-new-tokens N] [--temperature T] [--top-p P]
    llm-course evaluate MODEL [MODEL ...] [--tasks TASK ...] [--limit N] [--json PATH]   (Chapter 13)
"""

from __future__ import annotations

import argparse
import sys

from reference.course import catalog, grader, listing


def _chapters(keys: list[str], parser: argparse.ArgumentParser) -> list[catalog.Chapter]:
    try:
        chosen = [catalog.chapter(key) for key in keys] if keys else list(catalog.CHAPTERS)
    except ValueError as error:
        parser.error(str(error))
    return list(dict.fromkeys(chosen))


def cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.markdown:
        print(listing.markdown_table())
        return 0
    chapters = _chapters(args.chapters, parser)
    tests = None
    if args.tests:  # how many tests grade each exercise: only this collects them
        tests, errors = listing.count_tests(chapters)
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
    print(listing.format_listing(chapters, tests, show_tests=args.tests))
    return 0


def cmd_grade(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    chapters = _chapters(args.chapters, parser)
    if not args.timeout > 0:
        parser.error(f"--timeout must be positive, got {args.timeout}")
    if not args.budget > 0:
        parser.error(f"--budget must be positive, got {args.budget}")
    # a placeholder first, the real results last, after every process the tests started is dead
    report = grader.grade_to_file(
        chapters, args.impl, args.json, timeout=args.timeout, budget=args.budget, exercises_path=args.exercises_path
    )
    print(grader.format_table(report))
    print(f"results written to {args.json}")
    return 0


def _load_for_generation(args: argparse.Namespace):
    """The model (eval mode, on the chosen device) and tokenizer named by --model, and the sampling arguments."""
    import torch

    from reference import load_pretrained
    from reference.inference import check_sampling
    from reference.runtime import pick_device

    check_sampling(args.temperature, args.top_k, args.top_p)
    model, tokenizer = load_pretrained(args.model)
    model = model.to(pick_device(args.device)).eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    sampling = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator)
    return model, tokenizer, sampling


def cmd_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from reference.inference.chat import render_chat, stop_ids, stream_text

    try:
        model, tokenizer, sampling = _load_for_generation(args)
        text = " ".join(args.prompt)
        ids = render_chat(tokenizer, [{"role": "user", "content": text}]) if args.chat else tokenizer.encode(text)
        max_new = min(args.max_new_tokens, model.context_length - len(ids))
        for piece in stream_text(model, tokenizer, ids, max_new, stop_at=stop_ids(tokenizer), **sampling):
            print(piece, end="", flush=True)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    return 0


def cmd_chat(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from reference.inference.chat import ChatSession

    try:
        model, tokenizer, sampling = _load_for_generation(args)
        max_new = min(args.max_new_tokens, model.context_length // 2)  # leave half the context to the conversation
        session = ChatSession(model, tokenizer, system=args.system, max_new_tokens=max_new, **sampling)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Chatting with {args.model} (context {model.context_length} tokens). /reset forgets, /exit or Ctrl-D ends.")
    while True:
        print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() in ("/exit", "/quit"):
            print()
            return 0
        if line.strip() == "/reset":
            session.messages = session.messages[:1] if args.system is not None else []
            continue
        if not line.strip():
            continue
        print(f"{args.model}> ", end="", flush=True)
        try:
            for piece in session.reply(line.rstrip("\n")):
                print(piece, end="", flush=True)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
        print()


def _sampling_options(command: argparse.ArgumentParser, model: str | None, max_new: int, temperature: float, top_p: float | None) -> None:
    command.add_argument("--model", default=model, required=model is None,
                         help="a course model: llama-tiny, smollm2-135m-instruct" + (f" (default: {model})" if model else ""))
    command.add_argument("--max-new-tokens", type=int, default=max_new, metavar="N", help=f"longest reply (default: {max_new})")
    command.add_argument("--temperature", type=float, default=temperature, metavar="T", help=f"0 is greedy (default: {temperature})")
    command.add_argument("--top-k", type=int, default=None, metavar="K", help="sample from the K most probable tokens")
    command.add_argument("--top-p", type=float, default=top_p, metavar="P", help=f"nucleus sampling (default: {top_p})")
    command.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default: 0)")
    command.add_argument("--device", default=None, help="cpu, cuda, ... (default: the GPU when there is one)")  # fmt: skip


def cmd_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`llm-course serve`: Chapter 16's engine behind OpenAI's API (reference.serving.server)."""
    from reference.serving.server import serve

    adapters = {}
    for spec in args.lora or ():  # NAME=PATH: a Chapter 11 adapter file served as model "<base>:NAME"
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--lora takes NAME=PATH, got {spec!r}")
        adapters[name] = path
    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, num_blocks=args.num_blocks,
          max_num_seqs=args.max_num_seqs, lora=adapters)  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-course", description="Understanding LLMs: the course's command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    lister = sub.add_parser("list", help="show chapters, exercises and points")
    lister.add_argument("chapters", nargs="*", metavar="CHAPTER", help="number (1, 01) or short name (attention)")
    lister.add_argument("--markdown", action="store_true", help="print the README's chapter table instead")
    lister.add_argument("--tests", action="store_true", help="also count each exercise's tests (collects them: seconds)")
    lister.set_defaults(run=cmd_list)
    grading = sub.add_parser("grade", help="grade exercises and write Gradescope's results.json")
    grading.add_argument("chapters", nargs="*", metavar="CHAPTER", help="number (1, 01) or short name; none: all")
    grading.add_argument("--impl", choices=grader.IMPLEMENTATIONS, default="exercises", help="what to grade (default: exercises)")
    grading.add_argument("--json", default="results.json", metavar="PATH", help="where to write results (default: results.json)")
    grading.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="time limit of each test (default: 60)")
    grading.add_argument(
        "--budget",
        type=float,
        default=grader.DEFAULT_BUDGET_SECONDS,
        metavar="SECONDS",
        help=f"time limit of the whole run; tests not reached by then score 0 (default: {grader.DEFAULT_BUDGET_SECONDS:g})",
    )
    grading.add_argument(
        "--exercises-path", default=None, metavar="DIR", help="grade the `exercises` package in DIR (e.g. a submission)"
    )
    grading.set_defaults(run=cmd_grade)
    generation = sub.add_parser("generate", help="continue a prompt with a course model, streaming (Chapter 15)")
    generation.add_argument("prompt", nargs="+", help="the text to continue")
    generation.add_argument("--chat", action="store_true", help="wrap the prompt as a user message in the chat template")
    _sampling_options(generation, None, 64, 0.0, None)
    generation.set_defaults(run=cmd_generate)
    chatting = sub.add_parser("chat", help="an interactive, streaming chat in the terminal (Chapter 15)")
    chatting.add_argument("--system", default=None, help="a system prompt")
    _sampling_options(chatting, "smollm2-135m-instruct", 256, 0.7, 0.9)
    chatting.set_defaults(run=cmd_chat)
    serving = sub.add_parser("serve", help="an OpenAI-compatible HTTP server on localhost (Chapter 16)")
    serving.add_argument("--model", default="smollm2-135m-instruct", help="a course model (default: smollm2-135m-instruct)")
    serving.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serving.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serving.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (else 401)")
    serving.add_argument("--num-blocks", type=int, default=None, help="KV cache blocks of 16 tokens (default: as many as fit in 512 MiB)")
    serving.add_argument("--max-num-seqs", type=int, default=16, help="most sequences per step (default: 16)")
    serving.add_argument("--lora", action="append", metavar="NAME=PATH", help="serve a LoRA adapter file (Chapter 11's "
                         "save_adapter) as model '<model>:NAME'; repeatable")  # fmt: skip
    serving.set_defaults(run=cmd_serve)
    # `pretrain` is handed to the trainer's own parser by `main` (its options: llm-course pretrain --help)
    sub.add_parser("pretrain", help="pre-train a language model from a JSON config (Chapter 6)", add_help=False)
    # `evaluate` is handed to reference.evaluation.run by `main` (its options: llm-course evaluate --help)
    sub.add_parser("evaluate", help="score models on the Chapter 13 tasks, write chapters/results/13_harness.json", add_help=False)
    # `finetune` is handed to reference.finetune.results's own parser (llm-course finetune --help)
    sub.add_parser("finetune", help="measure every fine-tuning method on a model, write JSON (Chapter 11)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pretrain"]:  # imported only here: torch and matplotlib are slow to load for `list`
        from reference.training import trainer

        return trainer.main(argv[1:])
    if argv[:1] == ["evaluate"]:  # llm-course evaluate MODEL ... --tasks ... (Chapter 13)
        from reference.evaluation import run

        return run.main(argv)
    if argv[:1] == ["finetune"]:  # Chapter 11's results command
        from reference.finetune import results

        return results.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
