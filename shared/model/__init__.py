"""The message model: what a message is, the states it goes through, and the rules its delivery state keeps.

* ``message`` -- a message's fields, its ids, its Redis field map (and the Lua field lists made from it);
* ``priority`` -- the priority tiers and what each may use;
* ``topics`` -- topic names, patterns, the grants a token carries, positions and recovery, namespace policies;
* ``states`` -- a delivery's states (accepted, scheduled, due, dispatched, delivered, acked, expired,
  cancelled, trimmed), which follows which, and which close it;
* ``poststate`` -- a post's delivery state as pure data: every transition the Redis scripts of
  ``shared.delivery.inbox`` implement (open, close, expire) is one method here, and ``check`` states the
  invariants they keep.

A scheduled message's own transitions are the scripts of ``shared.delivery.schedule``: ``CLAIM`` (scheduled
-> due, once, by one dispatch instance), ``SETTLE`` (due -> handed over, the ``open`` above) and
``CANCEL`` (scheduled -> cancelled); they keep no counters.

The tests drive ``poststate`` with random transitions (a hypothesis state machine) and run the
same random transitions against Redis, comparing the two after each step.
"""
