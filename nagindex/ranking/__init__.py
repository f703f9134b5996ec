"""Ranking: target profiles, exact scores, and selections from them.

- `scoring`: pure maths, the integer profile and the gather-sum kernel.
- `selection`: pure maths, exact order, token budget, top N, mixture, quality combination.
- `query`: a target set against an index snapshot, end to end.
- `baselines`: TF-IDF, MiniLM, DSIR and random scores for the quality harness.
"""
