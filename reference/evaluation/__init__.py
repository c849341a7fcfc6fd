"""Chapter 13, evaluation (survey section 2.6): perplexity, a benchmark harness, open-domain QA,
BLEU / ROUGE / BERTScore, security evaluation and human-evaluation agreement.

Modules: `bleu`, `rouge`, `bertscore`, `qa`, `perplexity`, `harness`, `security`, `human`, and `run`
(the commands behind the chapter's stored results).
"""
