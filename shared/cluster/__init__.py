"""Who holds whom: the push nodes' cards and the users' routes (``routes``), and which nodes hold a topic's
subscribers (``topic_holders``), all in Redis with TTLs kept alive by heartbeats.
"""
