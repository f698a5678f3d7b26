"""RAVEL-style city material: cities with (country, continent, language), and two prompt templates
per attribute. Kept: the cities SmolLM2-135M answers correctly for every attribute under both
templates (30 of 59 candidates, checked by greedy decoding; values follow the model's naming, e.g.
Czechia, and Australia as the continent of Sydney)."""

#: city -> (Country, Continent, Language)
CITIES = {
    "Paris": ("France", "Europe", "French"),
    "Madrid": ("Spain", "Europe", "Spanish"),
    "Rome": ("Italy", "Europe", "Italian"),
    "Lisbon": ("Portugal", "Europe", "Portuguese"),
    "Athens": ("Greece", "Europe", "Greek"),
    "Warsaw": ("Poland", "Europe", "Polish"),
    "Vienna": ("Austria", "Europe", "German"),
    "Prague": ("Czechia", "Europe", "Czech"),
    "Budapest": ("Hungary", "Europe", "Hungarian"),
    "Helsinki": ("Finland", "Europe", "Finnish"),
    "Dublin": ("Ireland", "Europe", "English"),
    "Barcelona": ("Spain", "Europe", "Spanish"),
    "Munich": ("Germany", "Europe", "German"),
    "Milan": ("Italy", "Europe", "Italian"),
    "Tokyo": ("Japan", "Asia", "Japanese"),
    "Osaka": ("Japan", "Asia", "Japanese"),
    "Seoul": ("South Korea", "Asia", "Korean"),
    "Bangkok": ("Thailand", "Asia", "Thai"),
    "Jakarta": ("Indonesia", "Asia", "Indonesian"),
    "Dhaka": ("Bangladesh", "Asia", "Bengali"),
    "Cairo": ("Egypt", "Africa", "Arabic"),
    "Lagos": ("Nigeria", "Africa", "English"),
    "Johannesburg": ("South Africa", "Africa", "English"),
    "Mexico City": ("Mexico", "North America", "Spanish"),
    "Buenos Aires": ("Argentina", "South America", "Spanish"),
    "Lima": ("Peru", "South America", "Spanish"),
    "Rio de Janeiro": ("Brazil", "South America", "Portuguese"),
    "Montevideo": ("Uruguay", "South America", "Spanish"),
    "Sydney": ("Australia", "Australia", "English"),
    "Melbourne": ("Australia", "Australia", "English"),
}

ATTRIBUTES = ("Country", "Continent", "Language")

#: attribute -> templates ({city}); the one-shot example city (Kyoto) is not among CITIES
TEMPLATES = {
    "Country": ("The city of {city} is in the country of",
                "City: Kyoto\nCountry: Japan\n\nCity: {city}\nCountry:"),
    "Continent": ("The city of {city} is in the continent of",
                  "City: Kyoto\nContinent: Asia\n\nCity: {city}\nContinent:"),
    "Language": ("The main language spoken in {city} is",
                 "City: Kyoto\nLanguage: Japanese\n\nCity: {city}\nLanguage:"),
}
