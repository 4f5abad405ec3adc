"""Feature analysis: top-activating contexts now; browser, steering, monitors later."""
