"""The gateway's stages, one module each, in the order they run (DESIGN.md): ``auth`` (who is
calling) … ``upstream`` (route, retry, continue; terminal).  Each is ``async (call, next) ->
answer`` (:mod:`fleetpilot.gateway.pipeline`) and is tested alone."""
