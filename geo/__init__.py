"""GeoIP lookup, nearest-edge choice, and the GeoDNS server."""
