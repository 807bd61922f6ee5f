"""Looking at reconstructions: a browser 4D viewer and PNG image panels."""
