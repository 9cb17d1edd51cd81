"""Stripe webhook intake: an ASGI receiver that stores every verified event durably before
answering, and starts one ProcessStripeEvent workflow per event."""
