"""Parties: each site and the coordinator, each in its own folder, talking over the network.

A party holds only its own folder (settings, store, catalogue, keystore) and its peers' public
identities (:mod:`.identity`). It reaches a peer only through the peer's service, over mutual TLS
(:mod:`.tls`), with every message signed by its ledger key (:mod:`.messages`), through a
:class:`~onshore.parties.client.PeerClient`. :mod:`.init` makes party folders and exchanges their
identities on one machine.
"""
