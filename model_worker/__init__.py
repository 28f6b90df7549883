"""Celery tasks and the generation / scoring backends they call.

Depends on ``rlhf``; never imported by it.
"""
