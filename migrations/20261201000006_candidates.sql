-- Direct-path candidates a daemon reported: its interface addresses with
-- its WireGuard port ("ip:port", comma-separated, best first). Peers probe
-- them with the public endpoint to find a direct path.
ALTER TABLE devices ADD COLUMN candidates TEXT NOT NULL DEFAULT '';
