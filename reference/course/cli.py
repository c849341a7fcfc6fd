"""`llm-course`: the course's command line. Thin: it parses arguments, calls the package, prints.

    llm-course list [CHAPTER ...] [--markdown] [--tests]   chapters, exercises and their points
    llm-course grade [CHAPTER ...] [--impl exercises|reference] [--json PATH] [--timeout SECONDS]
                     [--budget SECONDS] [--exercises-path DIR]
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
    # `pretrain` is handed to the trainer's own parser by `main` (its options: llm-course pretrain --help)
    sub.add_parser("pretrain", help="pre-train a language model from a JSON config (Chapter 6)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pretrain"]:  # imported only here: torch and matplotlib are slow to load for `list`
        from reference.training import trainer

        return trainer.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.run(args, parser)


if __name__ == "__main__":
    sys.exit(main())
