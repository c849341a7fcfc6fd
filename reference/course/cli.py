"""`llm-course`: the course's command line. Thin: it parses arguments, calls the package, prints.

    llm-course list [CHAPTER ...] [--markdown]        chapters, exercises and their points
    llm-course grade [CHAPTER ...] [--impl exercises|reference] [--json PATH] [--timeout SECONDS]
                     [--budget SECONDS] [--exercises-path DIR]
"""

from __future__ import annotations

import argparse
import sys

from reference.course import catalog, grader


def _chapters(keys: list[str], parser: argparse.ArgumentParser) -> list[catalog.Chapter]:
    try:
        chosen = [catalog.chapter(key) for key in keys] if keys else list(catalog.CHAPTERS)
    except ValueError as error:
        parser.error(str(error))
    return list(dict.fromkeys(chosen))


def cmd_list(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.markdown:
        print(catalog.markdown_table())
        return 0
    chapters = _chapters(args.chapters, parser)
    for ch in chapters:  # points come from the catalog: nothing is collected
        print(f"Chapter {ch.number:2d}  {ch.title}  [{ch.slug}]  survey {ch.survey_section}  {ch.notebook}")
        for ex in ch.exercises:
            print(f"    {ex.id:<5} {ex.title:<40} {ex.points:>3} points   exercises/{ex.module.replace('.', '/')}.py: {ex.qualname}")
        if ch.exercises:
            print(f"    {'':<5} {'total':<40} {sum(e.points for e in ch.exercises):>3} points")
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
    listing = sub.add_parser("list", help="show chapters, exercises and points")
    listing.add_argument("chapters", nargs="*", metavar="CHAPTER", help="number (1, 01) or short name (attention)")
    listing.add_argument("--markdown", action="store_true", help="print the README's chapter table instead")
    listing.set_defaults(run=cmd_list)
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
