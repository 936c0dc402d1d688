"""The strong stage: standard AutoAttack and many-restart PGD at a path's ends and worst t (``stage``), the transfer check (``transfer``), its files and table metrics (``files``)."""
