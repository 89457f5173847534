"""Where a message's delivery state lives, in the order it moves: the post document in MongoDB (``store``), the
handover to Redis (``handover``), the per-message delivery state and inboxes (``inbox``), the dispatch stream
(``stream``), the schedule of delayed messages (``schedule``) and the lifecycle record (``lifecycle``).
"""
