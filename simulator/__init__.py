"""Stand-ins for the world outside the system: the downstream systems and the approvers' inbox.

``python -m simulator`` runs the downstream systems; ``python -m simulator.inbox`` the inbox.
"""
