"""The write path: staged files in the spool, their commits, and the uploads a mount owes."""
