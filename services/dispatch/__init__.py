"""dispatch: reads the handed-over posts, finds the push nodes holding each recipient, and forwards one batch per node;
fires the schedule and closes expired deliveries."""
