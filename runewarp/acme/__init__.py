"""ACME at run time: certbot as the engine, Runewarp answering TLS-ALPN-01 itself.

`certificates` owns certbot's folders and schedules it; `plugin` is the certbot
authenticator (entry point ``runewarp``) that writes the challenge material.
"""

from .certificates import (ALPN_ACME, AcmeCertificates, ChallengeResponder, certbot_reason,
                           challenge_file, renew_once, warn_port)

__all__ = ["ALPN_ACME", "AcmeCertificates", "ChallengeResponder", "certbot_reason",
           "challenge_file", "renew_once", "warn_port"]
